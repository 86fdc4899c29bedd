"""``eft-local serve``: an OpenAI-compatible HTTP API over one loaded EFT engine.

``app.create_app`` builds the ASGI app, ``worker`` runs generations on one engine thread,
``request`` maps request fields to generation settings, ``cli`` is the command.
"""
