"""The work of each DVC stage after download, as one library call per stage (the scripts in
`vitlens.stages` parse arguments and call these)."""
