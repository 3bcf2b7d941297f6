"""The scenario runner: one coordinator loop that starts the peers, drives the migration,
fires the scenario's steps and collects what happened."""
