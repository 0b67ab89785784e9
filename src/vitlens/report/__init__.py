"""The offline attention explorer: a trained model's maps as JSON (data), one self-contained
HTML page around them (page, with explorer.css and the scripts inlined: core.js, one file
per view, explorer.js)."""
