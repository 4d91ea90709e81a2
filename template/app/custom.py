"""Your own code for this app: the one Python file the template never touches again.

vgen creates this file once and skips it on every regeneration (copier's
_skip_if_exists), so what you write here survives `vgen generate`. create_app() calls
init_app(app) last, after every blueprint is registered. For example:

    from flask import Blueprint

    bp = Blueprint("custom", __name__)

    @bp.route("/about")
    def about():
        return "About us"

    def init_app(app):
        app.register_blueprint(bp)

Other ideas: app.jinja_env.filters[...] for your own template filters, extra CLI
commands with app.cli.add_command, or app.config changes.
"""


def init_app(app):
    """Called by create_app() with the configured app. Does nothing until you add code."""
