{
  "targets": [
    { "target_name": "malloc_tune", "sources": ["malloc_tune.c"] }
  ]
}
