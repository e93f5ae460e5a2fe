//! The rule table: every kind of secret the gate knows, most specific first.
//!
//! A rule is run only where one of its keywords occurs. Keywords of token
//! shapes are case-sensitive literals (`ghp_`, `AKIA`); keywords of context
//! rules are words matched in lower, UPPER and Title case (`twilio`). Order
//! is priority: where two rules find overlapping values, the earlier wins.
//! A capture group named `v` marks the secret; otherwise the whole match.

use super::generic::Family;

/// What a match must also satisfy.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Check {
    /// The shape is specific: only placeholders are dropped.
    Exact,
    /// The value must look random (generic assignments and headers).
    Random,
    /// A password: words allowed, stand-ins and references not.
    Password,
    /// Base64 of `user:password`.
    UserPass,
    /// Twelve to twenty-four seed words.
    Seed,
}

/// How a rule finds its values.
#[derive(Clone, Copy)]
pub(super) enum How {
    Regex(&'static str),
    /// The hand-written assignment reader in `generic`, run once per text.
    Assign(Family),
    /// The same, for names that name an AI provider (`GROQ_API_KEY`).
    Provider,
}

pub(super) struct RuleDef {
    pub(super) id: &'static str,
    pub(super) kind: &'static str,
    pub(super) keywords: &'static [&'static str],
    /// Keywords are words, matched in lower, UPPER and Title case.
    pub(super) fold: bool,
    pub(super) how: How,
    /// Characters of the value that are a fixed, public prefix (shown in the mask).
    pub(super) prefix: usize,
    pub(super) check: Check,
}

const fn exact(
    id: &'static str,
    kind: &'static str,
    keywords: &'static [&'static str],
    pattern: &'static str,
    prefix: usize,
) -> RuleDef {
    RuleDef {
        id,
        kind,
        keywords,
        fold: false,
        how: How::Regex(pattern),
        prefix,
        check: Check::Exact,
    }
}

const fn words(
    id: &'static str,
    kind: &'static str,
    keywords: &'static [&'static str],
    pattern: &'static str,
    check: Check,
) -> RuleDef {
    RuleDef {
        id,
        kind,
        keywords,
        fold: true,
        how: How::Regex(pattern),
        prefix: 0,
        check,
    }
}

const fn assign(id: &'static str, kind: &'static str, family: Family) -> RuleDef {
    RuleDef {
        id,
        kind,
        keywords: &[],
        fold: true,
        how: How::Assign(family),
        prefix: 0,
        check: Check::Random,
    }
}

impl RuleDef {
    /// The same rule with another check on its values.
    const fn then(self, check: Check) -> Self {
        RuleDef { check, ..self }
    }
}

/// `NAME op VALUE`, NAME matching `$name` in any case, VALUE matching `$value`.
macro_rules! named {
    ($name:literal, $value:literal) => {
        concat!(
            r"(?i:",
            $name,
            r")[\w\-.]*['\x22`]?\]?\s*(?::=|=>|[:=,]|\s)\s*(?:[bru]?['\x22`])?(?P<v>",
            $value,
            r")(?:[^A-Za-z0-9_\-+/=.]|\.\s|\.?$)"
        )
    };
}

/// Every rule, most specific first.
pub(super) const RULES: &[RuleDef] = &[
    // ---- LLM providers: the keys a Claude Code user actually holds.
    exact("anthropic-api-key", "Anthropic API key", &["sk-ant-"], r"\bsk-ant-(?:api|admin)\d{2}-[A-Za-z0-9_\-]{40,}", 7),
    exact("claude-oauth-token", "Claude OAuth token", &["sk-ant-"], r"\bsk-ant-(?:oat|ort)\d{2}-[A-Za-z0-9_\-]{40,}", 7),
    exact("openai-project-key", "OpenAI project/service key", &["sk-proj-", "sk-svcacct-", "sk-admin-"], r"\bsk-(?:proj|svcacct|admin)-[A-Za-z0-9_\-]{40,}", 8),
    exact("openai-legacy-key", "OpenAI API key", &["T3BlbkFJ"], r"\bsk-[A-Za-z0-9]{20}T3BlbkFJ[A-Za-z0-9]{20}\b", 3),
    exact("openrouter-key", "OpenRouter API key", &["sk-or-"], r"\bsk-or-v1-[a-f0-9]{64}\b", 9),
    exact("openai-style-key", "OpenAI-style API key (sk-)", &["sk-"], r"\bsk-(?:[A-Za-z0-9]{48}|[a-f0-9]{32}|[a-z]{48})\b", 3),
    exact("groq-key", "Groq API key", &["gsk_"], r"\bgsk_[A-Za-z0-9]{48,}\b", 4),
    exact("cerebras-key", "Cerebras API key", &["csk-"], r"\bcsk-[a-z0-9]{40,}\b", 4),
    exact("nvidia-key", "NVIDIA API key", &["nvapi-"], r"\bnvapi-[A-Za-z0-9_\-]{60,}", 6),
    exact("xai-key", "xAI API key", &["xai-"], r"\bxai-[A-Za-z0-9]{70,}\b", 4),
    exact("huggingface-token", "Hugging Face token", &["hf_"], r"\bhf_[A-Za-z0-9]{34,}\b", 3),
    exact("huggingface-org-token", "Hugging Face organization token", &["api_org_"], r"\bapi_org_[A-Za-z0-9]{34}\b", 8),
    exact("google-api-key", "Google API key", &["AIza"], r"\bAIza[0-9A-Za-z_\-]{35}\b", 4),
    exact("perplexity-key", "Perplexity API key", &["pplx-"], r"\bpplx-[A-Za-z0-9]{48}\b", 5),
    exact("replicate-token", "Replicate API token", &["r8_"], r"\br8_[A-Za-z0-9]{37}\b", 3),
    exact("langsmith-key", "LangSmith API key", &["lsv2_"], r"\blsv2_(?:pt|sk)_[a-f0-9]{32}_[a-f0-9]{10}\b", 8),
    exact("pinecone-key", "Pinecone API key", &["pcsk_"], r"\bpcsk_[A-Za-z0-9]{4,10}_[A-Za-z0-9]{40,}\b", 5),
    exact("together-key", "Together AI API key", &["tgp_v1_"], r"\btgp_v1_[A-Za-z0-9_\-]{40,}", 7),
    exact("fireworks-key", "Fireworks AI API key", &["fw_"], r"\bfw_[A-Za-z0-9]{24,}\b", 3),
    exact("tavily-key", "Tavily API key", &["tvly-"], r"\btvly-(?:dev-|prod-)?[A-Za-z0-9]{32}\b", 5),
    exact("firecrawl-key", "Firecrawl API key", &["fc-"], r"\bfc-[a-f0-9]{32}\b", 3),
    exact("elevenlabs-key", "ElevenLabs API key", &["sk_"], r"\bsk_[a-f0-9]{48}\b", 3),
    exact("voyage-key", "Voyage AI API key", &["pa-"], r"\bpa-[A-Za-z0-9_\-]{40,}", 3),
    exact("anyscale-key", "Anyscale API key", &["esecret_"], r"\besecret_[A-Za-z0-9]{20,}\b", 8),
    words("mistral-key", "Mistral API key", &["mistral"], named!(r"mistral[\w\-]*(?:key|token)", r"[A-Za-z0-9]{32}"), Check::Exact),
    words("cohere-key", "Cohere API key", &["cohere", "co_api"], named!(r"(?:cohere|co)[\w\-]*(?:key|token)", r"[A-Za-z0-9]{40}"), Check::Exact),
    // (Run by `generic::assignments`: a secret-named value whose name names an AI provider.)
    RuleDef {
        id: "ai-provider-key",
        kind: "AI provider API key (by name)",
        keywords: &[],
        fold: true,
        how: How::Provider,
        prefix: 0,
        check: Check::Random,
    },
    // ---- Cloud.
    exact("aws-access-key-id", "AWS access key id", &["AKIA", "ASIA", "ABIA", "ACCA"], r"\b(?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16}\b", 4),
    words("aws-secret-key", "AWS secret access key", &["aws"], named!(r"aws[\w\-.]{0,20}?(?:secret|access)[\w\-.]{0,20}?", r"[A-Za-z0-9/+=]{40}"), Check::Exact),
    words("aws-session-token", "AWS session token", &["session_token", "sessiontoken", "session-token", "session.token"], named!(r"aws[\w\-.]{0,10}session[\w\-.]{0,10}token", r"[A-Za-z0-9/+=]{100,}"), Check::Exact),
    exact("amazon-mws-token", "Amazon MWS auth token", &["amzn.mws."], r"\bamzn\.mws\.[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b", 9),
    exact("gcp-service-account", "GCP service-account key", &["private_key_id"], r#""private_key_id"\s*:\s*"(?P<v>[a-f0-9]{40})""#, 0),
    exact("gcp-oauth-client-secret", "Google OAuth client secret", &["GOCSPX-"], r"\bGOCSPX-[A-Za-z0-9_\-]{28}\b", 7),
    exact("gcp-refresh-token", "Google OAuth refresh token", &["1//0"], r"\b1//0[A-Za-z0-9_\-]{40,}", 4),
    exact("gcp-access-token", "Google OAuth access token", &["ya29."], r"\bya29\.[A-Za-z0-9_\-]{30,}", 5),
    exact("azure-storage-key", "Azure storage account key", &["AccountKey="], r"AccountKey=(?P<v>[A-Za-z0-9+/=]{60,})", 0),
    exact("azure-shared-access-key", "Azure Service Bus / Event Hubs shared access key", &["SharedAccessKey="], r"SharedAccessKey=(?P<v>[A-Za-z0-9+/=]{40,})", 0),
    exact("azure-client-secret", "Azure client secret", &["Q~"], r"\b(?P<v>[A-Za-z0-9_~.\-]{3}\dQ~[A-Za-z0-9_~.\-]{31,34})(?:[^A-Za-z0-9_~.\-]|$)", 0),
    exact("azure-sas-token", "Azure SAS signature", &["sig="], r"[?&]sv=\d{4}-\d{2}-\d{2}&[^\s'\x22]*?sig=(?P<v>[A-Za-z0-9%+/=]{40,})", 0),
    exact("azure-devops-pat", "Azure DevOps personal access token", &["AZDO"], r"\b[A-Za-z0-9]{76}AZDO[A-Za-z0-9]{4}\b", 0),
    words("azure-devops-pat-by-name", "Azure DevOps personal access token (by name)", &["azure", "devops", "ado", "azdo", "system_accesstoken"], named!(r"(?:azure[_\-]?devops|devops|ado|azdo|system)[\w\-.]*(?:pat|token|accesstoken)", r"[a-z2-7]{52}"), Check::Exact),
    exact("alibaba-access-key", "Alibaba Cloud AccessKey id", &["LTAI"], r"\bLTAI[A-Za-z0-9]{12,20}\b", 4),
    exact("tencent-secret-id", "Tencent Cloud SecretId", &["AKID"], r"\bAKID[A-Za-z0-9]{32}\b", 4),
    exact("yandex-key", "Yandex Cloud API key", &["AQVN"], r"\bAQVN[A-Za-z0-9_\-]{35,38}\b", 4),
    exact("digitalocean-token", "DigitalOcean token", &["dop_v1_", "doo_v1_", "dor_v1_"], r"\bdo[opr]_v1_[a-f0-9]{64}\b", 7),
    exact("heroku-api-key", "Heroku API key", &["HRKU-"], r"\bHRKU-[A-Za-z0-9_\-]{60,}", 5),
    words("heroku-key-by-name", "Heroku API key (by name)", &["heroku"], named!(r"heroku[\w\-.]*(?:key|token)", r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"), Check::Exact),
    exact("fly-token", "Fly.io token", &["FlyV1 ", "fo1_", "fm2_", "fm1r_", "fm1a_"], r"\b(?:FlyV1 fm[12][ar]?_[A-Za-z0-9+/=_\-]{40,}|fo1_[A-Za-z0-9_\-]{40,}|fm[12][ar]?_[A-Za-z0-9+/=_\-]{60,})", 0),
    exact("netlify-token", "Netlify access token", &["nfp_"], r"\bnfp_[A-Za-z0-9]{36,}\b", 4),
    words("netlify-token-by-name", "Netlify access token (by name)", &["netlify"], named!(r"netlify[\w\-.]*(?:token|key)", r"[A-Za-z0-9_\-]{40,46}"), Check::Exact),
    words("vercel-token", "Vercel token", &["vercel"], named!(r"vercel[\w\-.]*(?:token|key|secret)", r"[A-Za-z0-9]{24,}"), Check::Random),
    exact("render-key", "Render API key", &["rnd_"], r"\brnd_[A-Za-z0-9]{32,}\b", 4),
    exact("supabase-token", "Supabase access token", &["sbp_"], r"\bsbp_[a-f0-9]{40}\b", 4),
    exact("supabase-secret-key", "Supabase secret key", &["sb_secret_"], r"\bsb_secret_[A-Za-z0-9_\-]{20,}", 10),
    exact("planetscale-token", "PlanetScale token or password", &["pscale_"], r"\bpscale_(?:tkn|pw|oauth)_[A-Za-z0-9_\-=.]{32,64}", 11),
    exact("neon-key", "Neon API key", &["napi_"], r"\bnapi_[a-z0-9]{64}\b", 5),
    exact("pulumi-token", "Pulumi access token", &["pul-"], r"\bpul-[a-f0-9]{40}\b", 4),
    exact("terraform-cloud-token", "Terraform Cloud token", &["atlasv1"], r"\b[A-Za-z0-9]{14}\.atlasv1\.[A-Za-z0-9_\-=]{60,}", 0),
    exact("vault-token", "HashiCorp Vault token", &["hvs.", "hvb."], r"\bhv[sb]\.[A-Za-z0-9_\-]{24,}", 4),
    exact("doppler-token", "Doppler token", &["dp.pt.", "dp.st.", "dp.sa.", "dp.ct.", "dp.scim.", "dp.audit."], r"\bdp\.(?:pt|st|sa|ct|scim|audit)\.[A-Za-z0-9_\-]{40,}", 6),
    exact("onepassword-service-account", "1Password service account token", &["ops_eyJ"], r"\bops_eyJ[A-Za-z0-9+/=_\-]{100,}", 7),
    exact("onepassword-secret-key", "1Password account secret key", &["A3-"], r"\bA3-[A-Z0-9]{6}-(?:[A-Z0-9]{6}|[A-Z0-9]{11})-[A-Z0-9]{5}-[A-Z0-9]{5}-[A-Z0-9]{5}(?:-[A-Z0-9]{5})?\b", 3),
    exact("tailscale-key", "Tailscale key", &["tskey-"], r"\btskey-(?:auth|api|client|scim|webhook)-[A-Za-z0-9]{6,}-[A-Za-z0-9]{20,}", 11),
    exact("cloudflare-origin-ca-key", "Cloudflare Origin CA key", &["v1.0-"], r"\bv1\.0-[a-f0-9]{24}-[a-f0-9]{146}\b", 5),
    words("cloudflare-token", "Cloudflare API token", &["cloudflare", "cf_api", "cf-api", "cf_token"], named!(r"(?:cloudflare|cf)[_\-]?(?:api)?[_\-]?(?:token|key)", r"[A-Za-z0-9_\-]{37,40}"), Check::Exact),
    exact("openshift-token", "OpenShift user token", &["sha256~"], r"\bsha256~[A-Za-z0-9_\-]{43}\b", 7),
    // ---- Code hosts, CI and registries.
    exact("github-token", "GitHub token", &["ghp_", "gho_", "ghu_", "ghs_", "ghr_"], r"\bgh[pousr]_[A-Za-z0-9]{36,}\b", 4),
    exact("github-fine-grained-token", "GitHub fine-grained token", &["github_pat_"], r"\bgithub_pat_[A-Za-z0-9_]{80,}\b", 11),
    exact("gitlab-token", "GitLab token", &["glpat-", "gldt-", "glrt-", "glptt-", "glsoat-", "glcbt-", "gloas-", "glft-", "glimt-", "glagent-", "GR1348941"], r"\b(?:gl(?:pat|dt|rt|ptt|soat|cbt|oas|ft|imt|agent)-|GR1348941)[A-Za-z0-9_\-]{20,}", 6),
    exact("bitbucket-app-password", "Bitbucket app password", &["ATBB"], r"\bATBB[A-Za-z0-9_=.\-]{28,}", 4),
    exact("atlassian-token", "Atlassian API token", &["ATATT3"], r"\bATATT3[A-Za-z0-9_\-=]{180,}", 6),
    exact("circleci-token", "CircleCI personal token", &["CCIPAT_"], r"\bCCIPAT_[A-Za-z0-9]{22}_[a-f0-9]{40}\b", 7),
    exact("buildkite-token", "Buildkite API token", &["bkua_"], r"\bbkua_[a-f0-9]{40}\b", 5),
    exact("sonarqube-token", "SonarQube token", &["sqp_", "squ_", "sqa_"], r"\bsq[pua]_[a-f0-9]{40}\b", 4),
    exact("jfrog-key", "JFrog API key or identity token", &["AKCp", "cmVmdGtu"], r"\b(?:AKCp[A-Za-z0-9]{69}|cmVmdGtuOjAxOj[A-Za-z0-9]{40,})\b", 4),
    exact("sourcegraph-token", "Sourcegraph access token", &["sgp_"], r"\bsgp_(?:[a-f0-9]{16}_)?[a-f0-9]{40}\b", 4),
    exact("npm-token", "npm access token", &["npm_"], r"\bnpm_[A-Za-z0-9]{36}\b", 4),
    exact("pypi-token", "PyPI upload token", &["pypi-AgEIcHlwaS5vcmc"], r"\bpypi-AgEIcHlwaS5vcmc[A-Za-z0-9_\-]{50,}", 5),
    exact("rubygems-key", "RubyGems API key", &["rubygems_"], r"\brubygems_[a-f0-9]{48}\b", 9),
    exact("nuget-key", "NuGet API key", &["oy2"], r"\boy2[a-z0-9]{43}\b", 3),
    exact("clojars-token", "Clojars deploy token", &["CLOJARS_"], r"\bCLOJARS_[a-z0-9]{60}\b", 8),
    exact("dockerhub-token", "Docker Hub access token", &["dckr_pat_", "dckr_oat_"], r"\bdckr_(?:pat|oat)_[A-Za-z0-9_\-]{27,}", 9),
    exact("deno-token", "Deno Deploy token", &["ddp_"], r"\bddp_[A-Za-z0-9]{36}\b", 4),
    exact("figma-token", "Figma personal access token", &["figd_"], r"\bfigd_[A-Za-z0-9_\-]{40,}", 5),
    exact("infracost-key", "Infracost API key", &["ico-"], r"\bico-[A-Za-z0-9]{32}\b", 4),
    exact("octopus-key", "Octopus Deploy API key", &["API-"], r"\bAPI-[A-Z0-9]{26}\b", 4),
    exact("harness-token", "Harness access token", &["pat.", "sat."], r"\b(?:pat|sat)\.[A-Za-z0-9_\-]{22}\.[a-f0-9]{24}\.[A-Za-z0-9]{20}\b", 4),
    exact("prefect-key", "Prefect API key", &["pnu_"], r"\bpnu_[A-Za-z0-9]{36}\b", 4),
    exact("readme-key", "ReadMe API key", &["rdme_"], r"\brdme_[a-z0-9]{70}\b", 5),
    exact("scalingo-token", "Scalingo API token", &["tk-us-"], r"\btk-us-[A-Za-z0-9_\-]{48}\b", 6),
    // ---- Payments and commerce.
    exact("stripe-live-key", "Stripe live secret/restricted key", &["sk_live_", "rk_live_"], r"\b[sr]k_live_[A-Za-z0-9]{24,}\b", 8),
    exact("stripe-test-key", "Stripe test-mode secret key", &["sk_test_", "rk_test_"], r"\b[sr]k_test_[A-Za-z0-9]{24,}\b", 8),
    exact("stripe-webhook-secret", "Stripe webhook secret", &["whsec_"], r"\bwhsec_[A-Za-z0-9+/=]{32,}", 6),
    exact("braintree-token", "Braintree access token", &["access_token$"], r"\baccess_token\$(?:production|sandbox)\$[a-z0-9]{16}\$[a-f0-9]{32}\b", 13),
    words("paypal-secret", "PayPal client secret", &["paypal"], named!(r"paypal[\w\-.]*(?:secret|key)", r"[A-Za-z0-9_\-]{60,90}"), Check::Random),
    exact("square-token", "Square access token or secret", &["sq0atp-", "sq0csp-", "EAAA"], r"\b(?:sq0atp-[A-Za-z0-9_\-]{22}|sq0csp-[A-Za-z0-9_\-]{43}|EAAA[A-Za-z0-9_\-+=]{60,})", 0),
    exact("shopify-token", "Shopify access token", &["shpat_", "shpca_", "shppa_", "shpss_"], r"\bshp(?:at|ca|pa|ss)_[a-fA-F0-9]{32}\b", 6),
    exact("flutterwave-key", "Flutterwave secret key", &["FLWSECK"], r"\bFLWSECK(?:_TEST)?-[a-f0-9]{32}-X\b", 8),
    exact("plaid-token", "Plaid access token", &["access-production-", "access-sandbox-", "access-development-"], r"\baccess-(?:production|sandbox|development)-[a-f0-9]{8}-[a-f0-9]{4}-[a-f0-9]{4}-[a-f0-9]{4}-[a-f0-9]{12}\b", 7),
    exact("easypost-key", "EasyPost API key", &["EZAK", "EZTK"], r"\bEZ[AT]K[A-Za-z0-9]{54}\b", 4),
    exact("shippo-token", "Shippo API token", &["shippo_"], r"\bshippo_(?:live|test)_[a-f0-9]{40}\b", 12),
    exact("duffel-token", "Duffel API token", &["duffel_"], r"\bduffel_(?:test|live)_[A-Za-z0-9_\-=]{43}\b", 12),
    exact("salesforce-token", "Salesforce access token", &["00D"], r"\b00D[A-Za-z0-9]{12,15}![A-Za-z0-9_.]{80,}", 3),
    // ---- Chat, social and messaging.
    exact("slack-token", "Slack token", &["xoxb-", "xoxa-", "xoxp-", "xoxr-", "xoxs-", "xoxe"], r"\bxox(?:[abprs]|e(?:\.xox[bp])?)-[A-Za-z0-9\-]{10,}", 5),
    exact("slack-app-token", "Slack app-level token", &["xapp-"], r"\bxapp-\d-[A-Z0-9]+-\d+-[a-f0-9]{20,}", 5),
    exact("slack-webhook", "Slack incoming webhook", &["hooks.slack.com"], r"https://hooks\.slack\.com/(?:services|workflows|triggers)/T[A-Z0-9]+/[A-Z0-9]+/[A-Za-z0-9]{20,}", 0),
    // Most bot ids encode to `MT…`; the other leading pairs are English bigrams and wait for context.
    exact("discord-bot-token", "Discord bot token", &["MT", "Mj", "Mz", "Nj", "Nz"], r"\b[MNO][A-Za-z\d_\-]{23,25}\.[\w\-]{6}\.[\w\-]{27,38}\b", 0),
    words("discord-bot-token-by-context", "Discord bot token", &["discord", "client.run", "bot.run", "bot_token", "bottoken"], r"\b[MNO][A-Za-z\d_\-]{23,25}\.[\w\-]{6}\.[\w\-]{27,38}\b", Check::Exact),
    exact("discord-webhook", "Discord webhook", &["discord.com/api/webhooks", "discordapp.com/api/webhooks"], r"https://(?:ptb\.|canary\.)?discord(?:app)?\.com/api/webhooks/\d+/[\w\-]{60,}", 0),
    exact("teams-webhook", "Microsoft Teams webhook", &["webhook.office.com"], r"https://[\w\-]+\.webhook\.office\.com/webhookb2/[A-Za-z0-9@\-]+/IncomingWebhook/[A-Za-z0-9]{20,}/[A-Za-z0-9\-]{20,}", 0),
    exact("zapier-webhook", "Zapier webhook", &["hooks.zapier.com"], r"https://hooks\.zapier\.com/hooks/catch/\d+/[a-z0-9]{6,}", 0),
    exact("telegram-bot-token", "Telegram bot token", &[":AA"], r"\b\d{8,10}:AA[A-Za-z0-9_\-]{33}\b", 0),
    exact("facebook-access-token", "Facebook access token", &["EAA"], r"\bEAA[B-Za-z0-9][A-Za-z0-9]{90,}", 3),
    exact("twitter-bearer-token", "X/Twitter bearer token", &["AAAAAAAAAAAAAAAAAAAA"], r"\bA{20,22}[A-Za-z0-9%]{30,}", 0),
    exact("firebase-fcm-key", "Firebase Cloud Messaging server key", &[":APA91b"], r"\bAAAA[A-Za-z0-9_\-]{7}:APA91b[A-Za-z0-9_\-]{100,}", 0),
    // ---- Email, SaaS and observability.
    exact("sendgrid-key", "SendGrid API key", &["SG."], r"\bSG\.[A-Za-z0-9_\-]{22}\.[A-Za-z0-9_\-]{43}\b", 3),
    exact("brevo-key", "Brevo (Sendinblue) API key", &["xkeysib-", "xsmtpsib-"], r"\bx(?:keysib|smtpsib)-[a-f0-9]{64}-[A-Za-z0-9]{16}\b", 8),
    exact("mailchimp-key", "Mailchimp API key", &["-us"], r"\b[0-9a-f]{32}-us\d{1,2}\b", 0),
    exact("mailgun-key", "Mailgun API key", &["key-"], r"\bkey-[0-9a-f]{32}\b", 4),
    exact("twilio-api-key", "Twilio API key", &["SK0", "SK1", "SK2", "SK3", "SK4", "SK5", "SK6", "SK7", "SK8", "SK9", "SKa", "SKb", "SKc", "SKd", "SKe", "SKf"], r"\bSK[0-9a-f]{32}\b", 2),
    words("twilio-auth-token", "Twilio auth token", &["twilio"], r"(?:(?i:twilio)[\w\-.]{0,20}?(?i:token|secret)['\x22`]?\]?\s*(?::=|=>|[:=,]|\s)\s*['\x22`]?(?P<v>[a-f0-9]{32})|\bAC[a-f0-9]{32}['\x22]?\s*,\s*['\x22](?P<q>[a-f0-9]{32}))\b", Check::Exact),
    exact("linear-key", "Linear API key", &["lin_api_", "lin_oauth_"], r"\blin_(?:api|oauth)_[A-Za-z0-9]{40,64}\b", 8),
    exact("notion-token", "Notion integration token", &["secret_", "ntn_"], r"\b(?:secret_[A-Za-z0-9]{43}|ntn_[A-Za-z0-9]{40,})\b", 4),
    exact("airtable-token", "Airtable personal access token", &["pat"], r"\bpat[A-Za-z0-9]{14}\.[a-f0-9]{64}\b", 3),
    exact("hubspot-token", "HubSpot private app token", &["pat-na", "pat-eu"], r"\bpat-(?:na|eu)\d-[a-f0-9]{8}-[a-f0-9]{4}-[a-f0-9]{4}-[a-f0-9]{4}-[a-f0-9]{12}\b", 7),
    exact("contentful-token", "Contentful personal access token", &["CFPAT-"], r"\bCFPAT-[A-Za-z0-9_\-]{43}\b", 6),
    exact("typeform-token", "Typeform token", &["tfp_"], r"\btfp_[A-Za-z0-9_\-.=]{50,}", 4),
    exact("frameio-token", "Frame.io token", &["fio-u-"], r"\bfio-u-[A-Za-z0-9_\-=]{64}", 6),
    exact("adafruit-key", "Adafruit IO key", &["aio_"], r"\baio_[A-Za-z]{4}[0-9]{2}[A-Za-z0-9]{22}\b", 4),
    exact("dropbox-token", "Dropbox access token", &["sl."], r"\bsl\.[A-Za-z0-9_\-=]{130,}", 3),
    exact("resend-key", "Resend API key", &["re_"], r"\bre_[A-Za-z0-9]{8}_[A-Za-z0-9]{24}\b", 3),
    exact("mapbox-secret-token", "Mapbox secret token", &["sk.eyJ"], r"\bsk\.eyJ[A-Za-z0-9_\-]{20,}\.[A-Za-z0-9_\-]{20,}", 6),
    words("algolia-admin-key", "Algolia admin/write API key", &["algolia"], named!(r"algolia[\w\-.]*(?:admin|write|api)[\w\-.]*key", r"[a-f0-9]{32}"), Check::Exact),
    words("datadog-key", "Datadog API or application key", &["datadog", "dd_api", "dd_app", "dd-api", "dd-app"], named!(r"(?:datadog|dd)[_\-.]?(?:api|app(?:lication)?)[_\-.]?key", r"[a-f0-9]{32}|[a-f0-9]{40}"), Check::Exact),
    exact("dynatrace-token", "Dynatrace API token", &["dt0c01."], r"\bdt0c01\.[A-Z0-9]{24}\.[A-Z0-9]{64}\b", 7),
    exact("newrelic-key", "New Relic key", &["NRAK-", "NRAA-", "NRII-"], r"\bNR(?:AK|AA|II)-[A-Z0-9]{27,32}\b", 5),
    exact("newrelic-license-key", "New Relic license key", &["NRAL"], r"\b[a-f0-9]{36}NRAL\b", 0),
    exact("grafana-token", "Grafana token", &["glc_", "glsa_"], r"\b(?:glc_[A-Za-z0-9+/]{32,}={0,2}|glsa_[A-Za-z0-9]{32}_[a-f0-9]{8})", 4),
    exact("sentry-token", "Sentry auth token", &["sntrys_", "sntryu_"], r"\bsntry[su]_[A-Za-z0-9+/=_]{60,}", 7),
    exact("postman-key", "Postman API key", &["PMAK-"], r"\bPMAK-[a-f0-9]{24}-[a-f0-9]{34}\b", 5),
    exact("databricks-token", "Databricks token", &["dapi"], r"\bdapi[a-f0-9]{32}(?:-\d)?\b", 4),
    exact("launchdarkly-key", "LaunchDarkly API or SDK key", &["api-", "sdk-"], r"\b(?:api|sdk)-[a-f0-9]{8}-[a-f0-9]{4}-[a-f0-9]{4}-[a-f0-9]{4}-[a-f0-9]{12}\b", 4),
    words("okta-token", "Okta API token", &["okta", "ssws"], r"(?:(?i:okta)[\w\-.]*(?i:token|key)['\x22]?\s*[:=]\s*['\x22]?|SSWS\s+)(?P<v>00[A-Za-z0-9_\-]{40})\b", Check::Exact),
    words("auth0-secret", "Auth0 client secret or token", &["auth0"], named!(r"auth0[\w\-.]*(?:secret|token|key)", r"[A-Za-z0-9_\-]{32,}"), Check::Random),
    words("ngrok-token", "ngrok authtoken", &["ngrok", "authtoken"], r"\b2[A-Za-z0-9]{26}_[A-Za-z0-9]{21}\b", Check::Exact),
    // ---- Private keys and key material.
    exact("private-key", "PEM private key", &["PRIVATE KEY-----"], r"-----BEGIN (?:RSA |EC |DSA |ENCRYPTED |)PRIVATE KEY-----", 0),
    exact("openssh-private-key", "OpenSSH private key", &["OPENSSH PRIVATE KEY"], r"-----BEGIN OPENSSH PRIVATE KEY-----", 0),
    exact("pgp-private-key", "PGP private key block", &["PGP PRIVATE KEY"], r"-----BEGIN PGP PRIVATE KEY BLOCK-----", 0),
    exact("putty-private-key", "PuTTY private key", &["PuTTY-User-Key-File-"], r"PuTTY-User-Key-File-\d: ", 0),
    exact("age-secret-key", "age secret key", &["AGE-SECRET-KEY-1"], r"\bAGE-SECRET-KEY-1[QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L]{58}\b", 15),
    exact("jwt", "JSON Web Token", &["eyJ"], r"\beyJ[A-Za-z0-9_\-]{10,}\.eyJ[A-Za-z0-9_\-]{10,}\.[A-Za-z0-9_\-]{10,}", 3),
    // ---- Crypto wallets and one-time-password seeds.
    exact("crypto-extended-private-key", "HD wallet extended private key", &["xprv", "tprv", "yprv", "zprv"], r"\b[xtyz]prv[1-9A-HJ-NP-Za-km-z]{100,112}\b", 4),
    words("crypto-private-key-hex", "crypto wallet private key (hex)", &["priv", "wallet", "signer", "deployer", "eth_", "ethereum", "pk"], r"(?:(?i:priv(?:ate)?[\w\s\-]{0,12}key|wallet[\w\-]{0,12}(?:key|secret)|signer[\w\-]*key|deployer[\w\-]*key|eth[\w\-]*key|\bpk)['\x22]?\s*[:=]\s*['\x22]?|(?i:wallet)\(\s*['\x22])(?P<v>(?:0x)?[a-fA-F0-9]{64})\b", Check::Exact),
    words("crypto-private-key-base58", "crypto wallet private key (WIF/base58)", &["wif", "priv", "wallet", "bitcoin", "btc", "solana", "importprivkey"], r"(?i:wif|priv(?:ate)?[\w\s\-]{0,12}key|wallet[\w\-]{0,12}(?:key|secret)|bitcoin|btc|solana|importprivkey|secret[\w\-]*key)\W{0,6}(?P<v>[5KL][1-9A-HJ-NP-Za-km-z]{50,51}|[1-9A-HJ-NP-Za-km-z]{86,88})\b", Check::Exact),
    words("seed-phrase", "wallet seed phrase", &["seed", "mnemonic", "recovery", "phrase"], r"(?i:seed|mnemonic|recovery|secret)[\w \-]{0,40}(?:['\x22]?\s*[:=]\s*|:\s*|\bis\s+)['\x22]?(?P<v>(?:[a-z]{3,8}\s+){11,23}[a-z]{3,8})", Check::Seed),
    exact("totp-uri", "TOTP seed in an otpauth URI", &["otpauth://"], r"otpauth://[th]otp/[^\s?]*\?(?:[^\s]*&)?secret=(?P<v>[A-Za-z2-7]{16,})", 0),
    words("totp-secret", "TOTP/2FA seed", &["totp", "otp", "2fa", "mfa"], r"(?:(?i:totp|otp|2fa|mfa)[\w\-.]*(?i:secret|seed|key)['\x22]?\s*[:=]\s*['\x22]?|(?i:totp)\(\s*['\x22])(?P<v>[A-Z2-7]{16,}=*)", Check::Exact),
    // ---- Database and broker connection strings.
    exact("postgres-url", "PostgreSQL connection string password", &["postgres", "pgsql"], r"\b(?:postgres(?:ql)?|pgsql)(?:\+\w+)?://[^/\s:@'\x22]{1,64}:(?P<v>[^/\s@'\x22]{3,128})@", 0).then(Check::Password),
    exact("mysql-url", "MySQL connection string password", &["mysql", "mariadb"], r"\b(?:mysql|mariadb)(?:\+\w+)?://[^/\s:@'\x22]{1,64}:(?P<v>[^/\s@'\x22]{3,128})@", 0).then(Check::Password),
    exact("mongodb-url", "MongoDB connection string password", &["mongodb"], r"\bmongodb(?:\+srv)?://[^/\s:@'\x22]{1,64}:(?P<v>[^/\s@'\x22]{3,128})@", 0).then(Check::Password),
    exact("redis-url", "Redis connection string password", &["redis"], r"\bredis(?:s|\+sentinel)?://[^/\s:@'\x22]{0,64}:(?P<v>[^/\s@'\x22]{3,128})@", 0).then(Check::Password),
    exact("amqp-url", "AMQP (RabbitMQ) connection string password", &["amqp"], r"\bamqps?://[^/\s:@'\x22]{1,64}:(?P<v>[^/\s@'\x22]{3,128})@", 0).then(Check::Password),
    exact("mssql-url", "SQL Server connection string password", &["sqlserver", "mssql"], r"\b(?:sqlserver|mssql)(?:\+\w+)?://[^/\s:@'\x22]{1,64}:(?P<v>[^/\s@'\x22]{3,128})@", 0).then(Check::Password),
    exact("jdbc-url", "JDBC URL password", &["jdbc:"], r"\bjdbc:[a-z0-9:]+[^\s'\x22]*?[?&;:]password=(?P<v>[^&;\s'\x22]{3,128})", 0).then(Check::Password),
    words("oracle-connect", "Oracle connect string password", &["sqlplus", "oracle", "@//", "expdp", "impdp", "sqlldr", "userid=", "rman"], r"\b[A-Za-z_][\w$#]{0,29}/(?P<v>[^\s@/'\x22]{3,64})@(?://)?[\w.\-]+(?::\d+)?/[\w.\-]+", Check::Password),
    exact("kafka-jaas-password", "Kafka SASL JAAS password", &["jaas", "LoginModule"], r#"LoginModule\s+required\b[^\n]*?\bpassword\s*=\s*"(?P<v>[^"]{3,128})""#, 0).then(Check::Password),
    exact("ldap-url", "LDAP bind password in a URL", &["ldap"], r"\bldaps?://[^/\s:@'\x22]{1,128}:(?P<v>[^/\s@'\x22]{3,128})@", 0).then(Check::Password),
    exact("smtp-url", "SMTP/IMAP connection string password", &["smtp", "imap", "pop3"], r"\b(?:smtps?|imaps?|pop3s?)://[^/\s:@'\x22]{1,64}:(?P<v>[^/\s@'\x22]{3,128})@", 0).then(Check::Password),
    exact("ftp-url", "FTP/SFTP URL password", &["ftp"], r"\b(?:s?ftps?)://[^/\s:@'\x22]{1,64}:(?P<v>[^/\s@'\x22]{3,128})@", 0).then(Check::Password),
    exact("password-in-url", "password in a URL", &["://"], r"\b[a-zA-Z][a-zA-Z0-9+.\-]{1,20}://[^/\s:@'\x22]{1,64}:(?P<v>[^/\s:@'\x22]{3,128})@[A-Za-z0-9.\-\[\]]+", 0).then(Check::Password),
    words("connection-string-password", "password in a connection string", &["password=", "pwd="], r"(?i)(?:^|[;\s'\x22])(?:password|pwd)=(?P<v>[^;'\x22\s]{6,})", Check::Password),
    // ---- Credentials in well-known files.
    words("netrc-password", ".netrc password", &["machine", "\npassword ", "\n password ", "\n  password ", "\n\tpassword ", "\n    password "], r"(?m)(?:\bmachine\s+\S+\s+(?:login\s+\S+\s+)?|^[ \t]*)password[ \t]+(?P<v>\S{4,})[ \t]*$", Check::Password),
    exact("pgpass-line", ".pgpass password", &[":5432:", ":*:", ":5433:"], r"(?:^|\s)[^:\s#]+:(?:\d+|\*):[^:\s]+:[^:\s]+:(?P<v>[^\s:]{4,})(?:\s|$)", 0).then(Check::Password),
    exact("docker-config-auth", "Docker config.json registry auth", &["\"auth\""], r#""auth"\s*:\s*"(?P<v>[A-Za-z0-9+/]{8,}={0,2})""#, 0).then(Check::UserPass),
    words("basic-auth-header", "Basic credentials", &["basic"], r"(?i:basic)\s+(?P<v>[A-Za-z0-9+/]{8,}={0,2})(?:[^A-Za-z0-9+/=]|$)", Check::UserPass),
    exact("kubeconfig-client-key", "kubeconfig client key", &["client-key-data"], r"client-key-data['\x22]?\s*:\s*['\x22]?(?P<v>[A-Za-z0-9+/]{40,}={0,2})", 0),
    words("npmrc-auth", ".npmrc credential", &["_auth", "_password"], r"(?:^|:)(?:_auth|_authToken|_password)\s*=\s*['\x22]?(?P<v>[A-Za-z0-9+/=._\-]{12,})", Check::Random),
    words("maven-settings-password", "Maven settings.xml password", &["<password>", "<passphrase>", "<privatekey>"], r"<(?:password|passphrase)>(?P<v>[^<]{4,})</(?:password|passphrase)>", Check::Password),
    words("wp-config-secret", "WordPress wp-config.php secret", &["define"], r#"define\(\s*['"](?:DB_PASSWORD|(?:SECURE_)?AUTH_KEY|LOGGED_IN_KEY|NONCE_KEY|(?:SECURE_)?AUTH_SALT|LOGGED_IN_SALT|NONCE_SALT)['"]\s*,\s*['"](?P<v>[^'"]{6,})['"]"#, Check::Password),
    words("spring-property-secret", "Spring/Java properties secret", &["spring.", "datasource", "jasypt"], r"(?i)^\s*(?:spring|jasypt|datasource)\.[\w.\-]*(?:password|secret|token|key-store-password|api-key)\s*[=:]\s*(?P<v>\S{4,})", Check::Password),
    words("session-cookie", "session cookie", &["cookie"], r"(?i:cookie)['\x22]?\s*[:=]\s*['\x22]?[^\n]*?\b(?i:sessionid|session|sid|phpsessid|jsessionid|connect\.sid|_session|[\w.\-]*session[\w.\-]*|remember_token|auth_token|[\w.\-]*_sess|__Secure-[\w.\-]+|__Host-[\w.\-]+)=(?P<v>[^;\s]{12,})", Check::Random),
    exact("dockerfile-secret", "secret in a Dockerfile ENV/ARG", &["ENV ", "ARG "], r"(?m)^[ \t]*(?:ENV|ARG)[ \t]+[\w.]*(?i:password|passwd|secret|token|api_?key|access_?key|private_?key)[\w.]*[ \t]+(?P<v>\S{6,})[ \t]*$", 0).then(Check::Password),
    // ---- Command lines.
    words("cli-password-flag", "password or token on a command line", &["--"], r"(?:^|\s)--(?:[\w\-]*-)?(?:password|passwd|token|secret|api-key|apikey|access-key|secret-key|auth-token|client-secret|pass)(?:=|\s+)(?:'(?P<q>[^']{4,})'|\x22(?P<d>[^\x22]{4,})\x22|(?P<v>[^\s'\x22-][^\s'\x22]{3,}))", Check::Password),
    words("cli-short-password", "password in a -p flag", &["mysql", "mariadb", "sshpass", "docker", "podman", "redis-cli", "mysqldump", "helm", "ldap"], r"\b(?:(?:mysql|mysqldump|mariadb|sshpass|(?:docker|podman|helm)(?:\s+registry)?\s+login)\b[^\n|;&]*?\s-p|redis-cli\b[^\n|;&]*?\s-a|ldap(?:search|modify|add|delete|passwd|whoami|compare)\b[^\n|;&]*?\s-w)\s*(?:'(?P<q>[^']{4,})'|\x22(?P<d>[^\x22]{4,})\x22|(?P<v>[^\s'\x22-][^\s'\x22]{3,}))", Check::Password),
    words("secret-in-prose", "secret stated in prose", &["password is", "passwd is", "secret is", "token is", "key is", "password was", "secret was", "token was", "key was", "pw is", "passphrase is"], r"(?i:password|passwd|passphrase|secret|token|key|pw)\s+(?i:is|was)\s*:?\s+['\x22`]?(?P<v>[^\s'\x22`,;]{8,})", Check::Random),
    words("curl-user", "credentials in curl -u", &["curl"], r"\bcurl\b[^\n|;&]*?\s(?:-u|--user)\s*['\x22]?[^:\s'\x22]+:(?P<v>[^\s'\x22]{4,})", Check::Password),
    // ---- Headers.
    words("authorization-header", "Authorization header credential", &["authorization", "bearer", "token token="], r"(?i)(?:authorization['\x22]?\s*[:=]\s*['\x22]?(?:bearer|token|ssws)\s+|\bbearer\s+|\btoken\s+token=)(?P<v>[A-Za-z0-9._~+/=\-]{16,})", Check::Random),
    words("api-key-header", "API key header", &["x-api-key", "api-key", "x-auth-token", "private-token", "x-vault-token", "subscription-key", "x-goog-api-key", "x-rapidapi-key", "x-access-token", "x-api-token"], r"(?i:x-api-key|api-key|x-auth-token|private-token|x-vault-token|ocp-apim-subscription-key|x-goog-api-key|x-rapidapi-key|x-access-token|x-api-token)['\x22]?\s*[:=,]\s*['\x22]?(?P<v>[A-Za-z0-9._~+/=\-]{16,})", Check::Random),
    // ---- Generic: a random value assigned to a secret-sounding name.
    // (Run by `generic::assignments` over the operators, not by keywords.)
    assign("generic-password", "password assigned in code or config", Family::Password),
    assign("generic-secret", "secret assigned in code or config", Family::Secret),
    assign("generic-token", "token assigned in code or config", Family::Token),
    assign("generic-api-key", "key assigned in code or config", Family::Key),
];
