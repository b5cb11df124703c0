"""Example "trading bot" that slipway releases and installs.

Run it with ``python3 -m bot`` from the release's ``app`` directory; see
``README.md`` at the top of the example for the options and endpoints.
Keep this module import-free: ``python3 -m bot.save`` imports it too.
"""

DEFAULT_PORT = 8080
