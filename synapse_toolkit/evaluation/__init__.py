"""Evaluations users run (`syntk evaluate ...`): shipped models against classical baselines."""
