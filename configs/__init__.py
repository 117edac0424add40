"""Configuration files and the script that writes configs/paper.params.yaml."""
