"""dcframe's built-in stages, installed as `dcframe_plugins` and registered through entry points like any plugin."""
