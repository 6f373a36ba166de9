"""Where data lives: local paths and object stores (`s3://`, `gs://`, `az://`) behind one small
interface, so readers, writers and the run state name a location by one string either way."""
