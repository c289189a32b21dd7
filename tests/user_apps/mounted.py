"""A fastrtc app that mounts its stream on its own FastAPI app (`uvicorn tests.user_apps.mounted:app`),
as fastrtc's documentation shows, with only the import line changed."""

from fastapi import FastAPI

from streams import Stream  # was: from fastrtc import Stream


def flip(frame):
    return frame[::-1]


stream = Stream(handler=flip, modality="video", mode="send-receive")

app = FastAPI()
stream.mount(app)


@app.get("/hello")
def hello() -> dict[str, str]:
    return {"hello": "world"}
