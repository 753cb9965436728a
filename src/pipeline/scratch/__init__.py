"""The labs' own building blocks: each module is a torch.autograd.Function whose backward is written by hand,
wrapped in an nn.Module with the same parameter names as its torch.nn counterpart (so checkpoints load either
way). `modules=scratch` swaps them into any model (swap.py); `python -m pipeline.gradcheck` checks them."""
