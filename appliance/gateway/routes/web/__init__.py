"""Server-rendered pages: login (OIDC code + PKCE), the analyst console, the compliance pages and the admin page.

Every page needs a live server-side session; an idle or expired one sends the browser to the login page with
the reason (and an ``auth.logout`` audit event). Every form carries the session's CSRF token.
"""

from appliance.gateway.routes.web._admin import (
    admin_breakglass,
    admin_breakglass_revoke,
    admin_create_key,
    admin_page,
    admin_revoke_key,
)
from appliance.gateway.routes.web._compliance import compliance, compliance_export, compliance_verify
from appliance.gateway.routes.web._console import console, console_generate
from appliance.gateway.routes.web._docs import docs
from appliance.gateway.routes.web._login import (
    auth_callback,
    auth_logged_out,
    auth_login,
    auth_logout,
    home,
    login_page,
)

ROUTES = [
    home,
    login_page,
    auth_login,
    auth_callback,
    auth_logout,
    auth_logged_out,
    console,
    console_generate,
    compliance,
    compliance_export,
    compliance_verify,
    admin_page,
    admin_create_key,
    admin_revoke_key,
    admin_breakglass,
    admin_breakglass_revoke,
    docs,
]

__all__ = ["ROUTES"]
