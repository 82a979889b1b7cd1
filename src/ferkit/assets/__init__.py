"""Files that ship with ferkit: the sample photo (see README.md here for its source and licence)."""
