"""The lab: problems -> runner -> store -> report. Depends on the library, never the reverse."""
