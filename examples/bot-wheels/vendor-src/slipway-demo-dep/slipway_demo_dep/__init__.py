"""A stand-in dependency for examples/bot-wheels: the bot reports its version."""

__version__ = "1.0.0"


def greeting():
    return f"slipway-demo-dep {__version__}"
