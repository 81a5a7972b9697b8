"""The demo subject (MICCAI 2012 subject 1000); see CREDIT.md."""
