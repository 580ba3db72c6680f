"""requests' transport into the Flask app in this process (werkzeug's test client), so that the
API helpers of tests/support.py (`Api`) speak to the app as they speak to gunicorn, with no socket
and no server process: the fast tier's way to hold the HTTP contract of what the app decides
itself (errors, validation, ownership)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import requests
from flask import Flask
from requests.adapters import BaseAdapter
from requests.structures import CaseInsensitiveDict
from requests.utils import get_encoding_from_headers

BASE_URL = "http://chatq.in-process"


class InProcess(BaseAdapter):
    def __init__(self, app: Flask) -> None:
        super().__init__()
        self.client = app.test_client()

    def send(self, request: requests.PreparedRequest, stream: bool = False, timeout: Any = None,
             verify: Any = True, cert: Any = None, proxies: Any = None) -> requests.Response:
        url = urlsplit(request.url or "")
        body = request.body.encode() if isinstance(request.body, str) else request.body
        answer = self.client.open(url.path, method=request.method, query_string=url.query,
                                  headers=dict(request.headers), data=body or b"")
        response = requests.Response()
        response.status_code = answer.status_code
        response.reason = answer.status.partition(" ")[2]
        response.headers = CaseInsensitiveDict(dict(answer.headers))
        response._content = answer.get_data()
        response.encoding = get_encoding_from_headers(response.headers)
        response.url, response.request = request.url or "", request
        return response

    def close(self) -> None:
        pass


def session(app: Flask) -> requests.Session:
    """A requests session whose requests to BASE_URL are answered by `app`."""
    made = requests.Session()
    made.mount(BASE_URL, InProcess(app))
    return made
