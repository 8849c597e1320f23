"""One module per page body: `render(ctx)` below the shared sidebar, split into section functions."""
