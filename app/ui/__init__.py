"""The operator page (`GET /ui`): what is loaded, asleep, sized and busy, live in the browser.

Everything here only reads what the rest of the gateway already keeps, except three bounded
rings fed at the edges (requests as they finish, process output as it is relayed, the gateway's
own log records) and one sampler of the backends' states. `feed.LiveFeed` turns them into one
snapshot a second, shared by every open page.
"""
