/**
 * `jupyterlab-gpu-meter:templates`: starter projects in JupyterLab's launcher.
 *
 * One launcher item per template the server extension lists
 * (`GET gpu-meter/templates`: the image's and the admin's), in a "Templates"
 * category. Clicking one copies it into `~/<slug>/` (`POST
 * gpu-meter/templates/<slug>`: missing files only, the user's are kept),
 * shows that folder in the file browser and opens its README.
 */
import { JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { URLExt } from '@jupyterlab/coreutils';
import { ILauncher } from '@jupyterlab/launcher';
import { ServerConnection } from '@jupyterlab/services';

interface ITemplate {
  slug: string;
  name: string;
  description: string;
}

interface ICopied {
  path: string;
  readme: string | null;
  copied: string[];
  kept: string[];
}

/** A JSON request to the server extension; an Error with its message when it fails. */
async function request<T>(path: string, init: RequestInit = {}): Promise<T> {
  const settings = ServerConnection.makeSettings();
  const url = URLExt.join(settings.baseUrl, 'gpu-meter', path);
  const response = await ServerConnection.makeRequest(url, init, settings);
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    throw new Error(body.message || `${response.status} ${response.statusText}`);
  }
  return body as T;
}

const CATEGORY = 'Templates';

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'jupyterlab-gpu-meter:templates',
  description: 'Starter projects from the notebook image in the launcher.',
  autoStart: true,
  optional: [ILauncher],
  activate: async (app: JupyterFrontEnd, launcher: ILauncher | null): Promise<void> => {
    if (!launcher) {
      return;
    }
    let templates: ITemplate[];
    try {
      templates = (await request<{ templates: ITemplate[] }>('templates')).templates;
    } catch (error) {
      console.warn('jupyterlab-gpu-meter: no templates in the launcher:', error);
      return;
    }
    templates.forEach((template, rank) => {
      const command = `jupyterlab-gpu-meter:template-${template.slug}`;
      app.commands.addCommand(command, {
        label: template.name,
        caption: `${template.description} Copied into ~/${template.slug} (your files are kept).`,
        execute: async () => {
          const copied = await request<ICopied>(
            `templates/${encodeURIComponent(template.slug)}`,
            { method: 'POST' }
          );
          if (app.commands.hasCommand('filebrowser:go-to-path')) {
            await app.commands.execute('filebrowser:go-to-path', { path: copied.path });
          }
          if (copied.readme) {
            await app.commands.execute('docmanager:open', {
              path: copied.readme,
              factory: 'Markdown Preview'
            });
          }
        }
      });
      launcher.add({ command, category: CATEGORY, rank });
    });
  }
};

export default plugin;
