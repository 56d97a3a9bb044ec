"""ECS/Fargate templates and their renderer (``python -m deploy.ecs.render``)."""
