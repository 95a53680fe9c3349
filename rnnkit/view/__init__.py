"""``rnnkit view``: one self-contained HTML page of gates, memory cells and gradient flow.

    page = rnnkit.view.page(model, x, loss_fn=..., text="...")
    page.save("view.html")          # or show ``page`` in Jupyter

See ``rnnkit.view.build.page`` for the arguments and ``rnnkit.view.command`` for the CLI.
"""
from .build import Page, page

__all__ = ["Page", "page"]
