"""Model I/O at the edges: model files and Hugging Face folders in and out."""
