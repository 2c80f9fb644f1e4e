"""Memory planning for launched backends: model facts from their own files, the plan per device."""
