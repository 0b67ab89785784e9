"""Where the model looks: attention math (attention), every map from one pass (maps), and
whether the maps show what the model uses (faithfulness)."""
