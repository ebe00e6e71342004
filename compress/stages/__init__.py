"""Stages: pretrain, prune, retrain, export. Each reads earlier outputs and writes a folder."""
