"""Reports of a session: the JSON record set and what renders it.

:func:`.json.build_json` is the single source: the terminal table (:mod:`.terminal`),
the Markdown summary (:mod:`.markdown`) and the HTML report (``html.py``, rendered from
the same dict) show what it produced, so every output shows the same numbers. Nothing
here imports the run loop: records, settings and environment summaries come in as data.
"""
