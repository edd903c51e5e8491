"""Imported by nothing: it shows that every file of the code directory is downloaded."""
