"""The bottom layer: errors, the board table, output directories, packaged resources, the one
process runner, the shared input checks and progress lines. Imports nothing else of s4op_micro."""
