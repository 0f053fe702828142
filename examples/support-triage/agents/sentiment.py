"""The sentiment-analysis skill: POST /invoke {"text": ...} -> {"sentiment": ..., "score": ...}.
A word count stands in for a model; what matters here is who may call it, for whom."""

import deputy
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

NEGATIVE = {"angry", "broken", "cannot", "refund", "twice", "unacceptable", "worst"}


async def invoke(request: Request):
    text = (await request.json()).get("text", "")
    words = [w.strip(".,!?").lower() for w in text.split()]
    score = -sum(w in NEGATIVE for w in words)
    verified: deputy.Verified = request.state.deputy
    return JSONResponse(
        {
            "sentiment": "negative" if score < 0 else "neutral",
            "score": score,
            "for": verified.principal,
            "caller": verified.peer,
        }
    )


app = deputy.DeputyASGIMiddleware(Starlette(routes=[Route("/invoke", invoke, methods=["POST"])]))
