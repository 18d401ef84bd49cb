"""Layouts: how a group's semaphore is named and encoded on a store."""
