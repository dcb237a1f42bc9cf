"""pytest hooks of pytest-unitablate (torch-free; being written)."""
