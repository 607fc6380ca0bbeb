"""One module per op: torch.library registration, fake impl, autograd, dispatch."""
