"""The page skeleton and style of the group report (inline CSS, no script, no external resource).

Promise
-------
:data:`PAGE` is a :class:`string.Template` with the placeholders ``$title``
and ``$body``; it references nothing outside the file (no font, stylesheet,
script or image URL), so the report opens offline and the same everywhere.
"""

from __future__ import annotations

from string import Template

__all__ = ["PAGE"]

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
       margin: 0 auto; max-width: 1040px; padding: 1em 1.5em 3em; color: #1d2329;
       background: #fff; line-height: 1.45; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { font-size: 1.3em; margin-top: 2.2em; padding-top: 0.6em; border-top: 2px solid #d5dbe1; }
h3 { font-size: 1.05em; margin-top: 1.6em; }
p.meta { color: #5a6672; font-size: 0.9em; margin-top: 0; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.6em 0; }
th, td { border: 1px solid #d5dbe1; padding: 0.25em 0.6em; text-align: left;
         vertical-align: top; }
th { background: #eef1f4; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.summary th { width: 16em; }
figure { margin: 1em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #e3e7eb; }
figcaption { font-size: 0.85em; color: #5a6672; margin-top: 0.3em; }
.warn { background: #fff4e0; border-left: 4px solid #e8a33d; padding: 0.5em 0.8em; }
.ok { background: #e9f6ec; border-left: 4px solid #3c9a57; padding: 0.5em 0.8em; }
code { font-size: 0.9em; background: #f3f5f7; padding: 0 0.2em; }
ul.files { font-size: 0.9em; }
nav ul { margin-top: 0.2em; }
"""

PAGE = Template(
    """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>$title</title>
<style>"""
    + _STYLE
    + """</style>
</head>
<body>
$body
</body>
</html>
"""
)
