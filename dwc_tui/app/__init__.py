"""The Textual dashboard (`dwc tui`): screens/, widgets/, the registry poller and the run actions.

Importing this package imports nothing heavy; :func:`dwc_tui.app.app.DwcApp` pulls in Textual.
"""
