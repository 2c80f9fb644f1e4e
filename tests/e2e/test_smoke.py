from openai import OpenAI


def test_chat_through_gateway(two_backends):
    gw, chat, _ = two_backends
    client = OpenAI(base_url=f"{gw.url}/v1", api_key="unused")
    reply = client.chat.completions.create(model="sim-chat", messages=[{"role": "user", "content": "hi"}], max_tokens=3)
    assert reply.choices[0].message.content == " the model gateway"
    assert chat.app.state.completed == 1
