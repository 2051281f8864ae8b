"""Deployment: docker-compose.yml's HAProxy config and the network-namespace proof of the compose topology
(``python -m deploy.netns``)."""
