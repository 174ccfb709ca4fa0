"""The settings search (`unlearn.search`): trials of the unlearn stage's training, scored by the evaluate
stage's code and the gate's checks, before the unlearn stage runs the chosen settings."""
