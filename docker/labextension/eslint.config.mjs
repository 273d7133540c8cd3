// `npm run lint`: typescript-eslint's recommended rules on src/ (the build's
// `tsc` already runs with strict, noUnused*, noImplicitReturns).
import tseslint from 'typescript-eslint';

export default tseslint.config(...tseslint.configs.recommended, {
  files: ['src/**/*.ts'],
  rules: {
    eqeqeq: 'error',
    'no-console': ['error', { allow: ['warn', 'error'] }]
  }
});
