"""State: what each head's recurrent memory holds, how full it gets, what it returns (`inspector_ui.views.state`)."""
from inspector_ui.sidebar import page_setup
from inspector_ui.views import state

ctx = page_setup("State", "🧠", state.ABOUT)
state.render(ctx)
