"""The offline attention explorer: a trained model's maps as JSON (data), one self-contained
HTML page around them (page, with explorer.js and explorer.css inlined)."""
