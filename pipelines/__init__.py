"""KFP pipelines: the DAGs that chain the components, and helpers to compile and run them."""
