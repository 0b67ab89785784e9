"""The work of each DVC stage, as one library call per stage (the scripts in
`vitlens.stages` parse arguments and call these)."""
