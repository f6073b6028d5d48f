"""codeparrot-ls: a language server serving code completions from a locally trained model."""

__version__ = "0.1.0"
