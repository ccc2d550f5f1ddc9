"""A single-file Django app, settings configured in code, for the end-to-end tests (run under
gunicorn: `gunicorn django_app:application`).

GET  /api/items/<id>?q=...  -> 200 application/json {"id": id, "q": q}
POST /api/echo              -> 201, the request body back with the request's content type
Every response carries X-Worker-Pid (the pid of the process that served it).
"""
import os

from django.conf import settings

settings.configure(
    DEBUG=False,
    SECRET_KEY="end-to-end-tests-only",
    ROOT_URLCONF=__name__,
    ALLOWED_HOSTS=["*"],
    MIDDLEWARE=[],
    INSTALLED_APPS=[],
    USE_TZ=True,
)

from django.core.wsgi import get_wsgi_application  # noqa: E402
from django.http import HttpResponse, JsonResponse  # noqa: E402
from django.urls import path  # noqa: E402


def item(request, item_id):
    response = JsonResponse({"id": item_id, "q": request.GET.get("q")})
    response["X-Worker-Pid"] = str(os.getpid())
    return response


def echo(request):
    response = HttpResponse(
        request.body,
        status=201,
        content_type=request.headers.get("Content-Type", "application/octet-stream"),
    )
    response["X-Worker-Pid"] = str(os.getpid())
    return response


urlpatterns = [
    path("api/items/<int:item_id>", item),
    path("api/echo", echo),
]

application = get_wsgi_application()
