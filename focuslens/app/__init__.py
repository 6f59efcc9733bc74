"""The application layer: run folders, the stages of the paper's experiment, the report's
story, ``focuslens demo`` and the command line.
"""
