"""The paper's experiments (Sun 2021): its tables rerun as ferkit runs, beside the numbers it reports."""
