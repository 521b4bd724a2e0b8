"""The record: schema, writer thread, reader."""
