"""ferkit's analysis tools: learned features, attention maps, training curves and cross-validation."""
