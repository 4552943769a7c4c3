"""The node program's Kubernetes access: the API client (``client``) and the watched pod cache
(``podcache``). The node agent, the repair controller and the shutdown decision (``upgrade``)
all sit on it, so none of them imports another to reach the API."""
