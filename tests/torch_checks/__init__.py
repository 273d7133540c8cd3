"""Scripts the PyTorch image tests run inside a notebook container (they need torch)."""
