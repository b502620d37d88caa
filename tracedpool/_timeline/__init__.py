"""The timeline room: ``tracedpool timeline``, a self-contained HTML page from a trace file.

- ``page``: reads OTLP/JSON lines, lays out one bar per task stage, renders the page.
"""
