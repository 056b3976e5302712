// Sign-in: email and password through POST /auth/login {cookie: true}, then, when the
// account has a second factor, the code through POST /auth/mfa.
K.views.login = function (root, { next } = {}) {
  const error = K.h('div');
  const email = K.h('input', { type: 'email', name: 'email', autocomplete: 'username', required: true, autofocus: true });
  const password = K.h('input', { type: 'password', name: 'password', autocomplete: 'current-password', required: true });
  const submit = K.h('button.primary', { type: 'submit' }, 'Sign in');
  const form = K.h('form.signin', { novalidate: true },
    K.h('h1', K.h('img', { src: K.icon, alt: '' }), 'Keel console'),
    K.h('label', 'Email', email),
    K.h('label', 'Password', password),
    error, submit,
    K.h('p.hint', 'Sign in with a Keel account: the superuser sees every org, an org\'s owners and admins see theirs.'));
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    K.mount(error);
    submit.disabled = true;
    try {
      const { data } = await K.api('POST', '/auth/login', { body: { email: email.value.trim(), password: password.value, cookie: true } });
      if (data.mfa_required) return secondFactor(root, data.mfa_token, next);
      await K.start(next);
    } catch (err) {
      K.mount(error, K.errorBox(err));
      submit.disabled = false;
    }
  });
  K.mount(root, K.h('main.signin-page', form));
};

function secondFactor(root, token, next) {
  const error = K.h('div');
  const code = K.h('input', { name: 'code', inputmode: 'numeric', autocomplete: 'one-time-code', required: true, autofocus: true, maxlength: 64 });
  const submit = K.h('button.primary', { type: 'submit' }, 'Verify');
  const form = K.h('form.signin', K.h('h1', 'Second factor'),
    K.h('p', 'Enter the 6-digit code from your authenticator app, or a recovery code.'),
    K.h('label', 'Code', code), error, submit);
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    submit.disabled = true;
    try {
      await K.api('POST', '/auth/mfa', { body: { mfa_token: token, code: code.value.trim(), cookie: true } });
      await K.start(next);
    } catch (err) {
      K.mount(error, K.errorBox(err));
      submit.disabled = false;
      if (err.code !== 'invalid_code') setTimeout(() => K.views.login(root, { next }), 1500);
    }
  });
  K.mount(root, K.h('main.signin-page', form));
}
